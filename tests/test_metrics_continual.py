import numpy as np
import pandas as pd
import pytest

from spatial_disorder.errors import InputError
from spatial_disorder.metrics.continual import continual_from_retrieval, continual_table


def table(df):
    return {(r.probe, r.quantity): r.value for r in df.itertuples()}


def test_hand_computed_forgetting_bwt_transfer():
    # stages s0..s3; task A learned at s1, task B at s2, held-out C never trained
    acc = pd.DataFrame({"A": [10.0, 50.0, 40.0, 30.0], "B": [20.0, 22.0, 60.0, 55.0], "C": [30.0, 35.0, 25.0, 20.0]},
                       index=["s0", "s1", "s2", "s3"])
    t = table(continual_table(acc, {"A": 1, "B": 2}))
    assert t[("A", "forgetting_max")] == 20.0 and t[("A", "forgetting_first")] == -20.0
    assert t[("A", "bwt")] == -20.0 and t[("B", "bwt")] == -5.0 and t[("C", "bwt")] == -10.0
    assert t[("all", "bwt")] == pytest.approx((-20 - 5 - 10) / 3)
    assert t[("A", "transfer")] == 10.0 and t[("B", "transfer")] == 21.0 and np.isnan(t[("C", "transfer")])
    assert t[("B", "avg")] == pytest.approx(39.25) and t[("B", "last")] == 55.0
    assert t[("C", "forgetting_max")] == 15.0 and t[("C", "first")] == 30.0 and t[("C", "best")] == 35.0


def test_no_forgetting_gives_zero_and_improvement_positive_bwt():
    acc = pd.DataFrame({"A": [1.0, 2.0, 3.0]}, index=["a", "b", "c"])
    t = table(continual_table(acc))
    assert t[("A", "forgetting_max")] == -1.0 and t[("A", "bwt")] == 2.0 and t[("A", "forgetting_first")] == -2.0


def test_from_retrieval_frame_and_errors():
    rows = [(s, "p", d, "R@1", v) for d in ("i2t", "t2i") for s, v in (("s0", 50.0), ("s1", 40.0))]
    df = continual_from_retrieval(pd.DataFrame(rows, columns=["stage", "probe", "direction", "metric", "value"]), ["s0", "s1"])
    sel = df[(df.direction == "i2t") & (df.quantity == "forgetting_first") & (df.probe == "p")]
    assert sel["value"].item() == 10.0
    with pytest.raises(InputError, match="unknown probe"):
        continual_table(pd.DataFrame({"A": [1.0]}), {"B": 0})
    with pytest.raises(InputError, match="stage index"):
        continual_table(pd.DataFrame({"A": [1.0, 2.0]}), {"A": 5})
