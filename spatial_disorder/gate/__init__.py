"""The CI drift gate (`sd-analyze check`): thresholds on any registered metric, JUnit and GitHub output, calibration."""

from .calibrate import null_band, propose
from .evaluate import CheckResult, counts, evaluate, exit_code, unavailable
from .github import annotations, escape_data, escape_property, markdown_summary
from .inputs import Comparison, analyse, from_arrays, from_runs, from_stages
from .junit import junit_xml
from .thresholds import Threshold, load_thresholds, parse_thresholds, to_toml

__all__ = [
    "CheckResult", "Comparison", "Threshold", "analyse", "annotations", "counts", "escape_data", "escape_property", "evaluate",
    "exit_code", "from_arrays", "from_runs", "from_stages", "junit_xml", "load_thresholds", "markdown_summary", "null_band",
    "parse_thresholds", "propose", "to_toml", "unavailable",
]
