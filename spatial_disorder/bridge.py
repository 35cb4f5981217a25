"""Carry a vector index across a model upgrade without the model: fit, apply, save and load a d x d bridge.

    from spatial_disorder import bridge
    b = bridge.fit(old_cal, new_cal)                 # rows: the same calibration items under both models
    bridge.save(b, "maps/image")                     # maps/image.npy + maps/image.json (checksum, dims, fit items)
    bridge.apply_npy(bridge.load("maps/image"), "old_index.npy", "new_index.npy")   # streamed, atomic

``direction="index"`` (default) maps old vectors into the new space, so the index is rewritten once and
new queries search it; ``direction="query"`` maps new queries into the old space and leaves the index as
it is. Applying works in row blocks: a memory-mapped ``.npy`` or a faiss flat index of any size is carried
over with bounded extra memory. Formulas, defaults and measurements: docs/bridge.md.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_write, atomic_write_bytes, atomic_write_json
from .errors import InputError
from .knn import as_unit_rows
from .metrics.bridge import (
    DEFAULT_FRACTION,
    DEFAULT_RIDGE,
    DIRECTIONS,
    METHODS,
    BridgeEvaluation,
    check_direction,
    check_method,
    evaluate_bridge,
    fit_map,
    learning_curve,
)

FORMAT = "spatial-disorder-bridge"
FORMAT_VERSION = 1
_BLOCK_BYTES = 16 << 20  # one float32 block of input rows; output and temporaries are the same order


@dataclass
class Bridge:
    """A fitted linear map: ``x @ matrix`` carries rows of the source space into the target space.

    ``fit_rows``: the calibration rows it was fitted on (None when unknown); ``n_fit``: how many.
    """

    matrix: np.ndarray
    method: str = "orthogonal"
    direction: str = "index"
    modality: str | None = None
    n_fit: int = 0
    fit_rows: list[int] | None = None
    ridge: float | None = None

    def __post_init__(self):
        self.matrix = check_matrix(self.matrix, "bridge matrix")
        check_method(self.method)
        check_direction(self.direction)

    @property
    def d_in(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def d_out(self) -> int:
        return int(self.matrix.shape[1])

    def apply(self, x, normalize: bool = True, block: int | None = None) -> np.ndarray:
        """Carry rows of ``x`` (an array or memory map) over, block by block; float32 out."""
        return apply(self, x, normalize=normalize, block=block)

    def sidecar(self, matrix_file: str, sha256: str) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "method": self.method, "direction": self.direction,
                "modality": self.modality, "d_in": self.d_in, "d_out": self.d_out, "dtype": str(self.matrix.dtype),
                "ridge": self.ridge, "n_fit": self.n_fit, "fit_rows": self.fit_rows, "matrix_file": matrix_file, "sha256": sha256}


def check_matrix(matrix, name: str = "bridge matrix") -> np.ndarray:
    """A finite 2-D float matrix, as float64."""
    m = np.asarray(matrix)
    if m.ndim != 2 or 0 in m.shape:
        raise InputError(f"{name}: expected a [d_in, d_out] matrix, got shape {m.shape}")
    if not (np.issubdtype(m.dtype, np.floating) or np.issubdtype(m.dtype, np.integer)):
        raise InputError(f"{name}: dtype {m.dtype} is not numeric")
    m = m.astype(np.float64)
    if not np.isfinite(m).all():
        raise InputError(f"{name}: {int((~np.isfinite(m)).sum())} entries are NaN or inf")
    return m


def fit(old, new, method: str = "orthogonal", direction: str = "index", ridge: float = DEFAULT_RIDGE,
        rows=None, modality: str | None = None) -> Bridge:
    """Fit a bridge on paired rows: ``old[i]`` and ``new[i]`` embed the same item under the two models.

    ``rows`` selects the calibration rows (default: all). Rows are L2-normalised block by block; products
    are accumulated in float64, so a memory-mapped calibration set is read once and never copied whole.
    """
    check_method(method)
    check_direction(direction)
    if getattr(old, "ndim", 2) != 2 or getattr(new, "ndim", 2) != 2:
        raise InputError(f"fit: expected [n, d] arrays, got shapes {np.shape(old)} and {np.shape(new)}")
    if len(old) != len(new):
        raise InputError(f"fit: {len(old)} old rows but {len(new)} new rows; the rows must be the same items")
    fit_rows = None
    if rows is not None:
        fit_rows = np.asarray(rows)
        if fit_rows.ndim != 1 or not np.issubdtype(fit_rows.dtype, np.integer):
            raise InputError("fit: rows must be a 1-D array of integer row numbers")
        if len(fit_rows) and (fit_rows.min() < 0 or fit_rows.max() >= len(old)):
            raise InputError(f"fit: rows refer to items outside 0..{len(old) - 1}")
        old, new = old[fit_rows], new[fit_rows]
    src, dst = (old, new) if direction == "index" else (new, old)
    matrix = fit_map(src, dst, method, ridge, what=f"calibration {modality or 'item'}s")
    return Bridge(matrix, method, direction, modality, int(len(src)), None if fit_rows is None else fit_rows.tolist(),
                  ridge if method == "ridge" else None)


def block_rows(d: int, block_bytes: int = _BLOCK_BYTES) -> int:
    return max(1, block_bytes // (4 * max(1, d)))


def _carry(bridge: Bridge, x: np.ndarray, normalize: bool) -> np.ndarray:
    y = np.asarray(x, dtype=np.float32) @ bridge.matrix.astype(np.float32)
    if normalize:
        return as_unit_rows(y, "carried rows")
    if not np.isfinite(y).all():
        raise InputError("carried rows: NaN or inf in the input rows")
    return y


def _check_width(bridge: Bridge, d: int, what: str) -> None:
    if d != bridge.d_in:
        raise InputError(f"{what} has dimension {d} but the bridge maps {bridge.d_in} -> {bridge.d_out} dimensions")


def apply(bridge: Bridge, x, normalize: bool = True, block: int | None = None) -> np.ndarray:
    """``x @ M`` in row blocks (unit rows when ``normalize``), float32 [n, d_out]."""
    if getattr(x, "ndim", None) != 2:
        raise InputError(f"apply: expected an [n, d] array, got shape {np.shape(x)}")
    _check_width(bridge, x.shape[1], "the array")
    block = block or block_rows(max(bridge.d_in, bridge.d_out))
    out = np.empty((x.shape[0], bridge.d_out), dtype=np.float32)
    for s in range(0, x.shape[0], block):
        out[s : s + block] = _carry(bridge, x[s : s + block], normalize)
    return out


def _npy_header(fh, path) -> tuple[tuple, np.dtype]:
    try:
        version = np.lib.format.read_magic(fh)
        reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}[version]
        shape, fortran, dtype = reader(fh)
    except Exception as exc:
        raise InputError(f"{path}: not a readable .npy file ({type(exc).__name__})") from None
    if len(shape) != 2 or fortran or dtype.hasobject or not np.issubdtype(dtype, np.floating):
        raise InputError(f"{path}: expected a C-ordered 2-D float array, got shape {shape}, dtype {dtype}, fortran={fortran}")
    return shape, dtype


def apply_npy(bridge: Bridge, src: str | os.PathLike, dst: str | os.PathLike, normalize: bool = True,
              block: int | None = None) -> Path:
    """Stream ``src`` (.npy, [n, d_in]) through the bridge into ``dst`` (.npy, float32 [n, d_out]).

    Reads and writes plain file blocks (no memory map whose pages would stay resident), so extra memory is
    a few blocks whatever n is; ``dst`` appears only when complete (temporary file, fsync, rename).
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise InputError(f"{src}: file does not exist")
    if src.resolve() == dst.resolve():
        raise InputError(f"{dst}: output must differ from the input")
    with open(src, "rb") as fin:
        (n, d), dtype = _npy_header(fin, src)
        _check_width(bridge, d, str(src))
        start = fin.tell()
        if os.fstat(fin.fileno()).st_size < start + n * d * dtype.itemsize:
            raise InputError(f"{src}: file is shorter than its header says ({n} x {d} {dtype})")
        block = block or block_rows(max(d, bridge.d_out))

        def write(fout):
            np.lib.format.write_array_header_1_0(fout, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")),
                                                        "fortran_order": False, "shape": (n, bridge.d_out)})
            buf = np.empty((block, d), dtype=dtype)
            fin.seek(start)
            for s in range(0, n, block):
                rows = buf[: min(block, n - s)]
                fin.readinto(memoryview(rows).cast("B"))
                fout.write(memoryview(np.ascontiguousarray(_carry(bridge, rows, normalize), dtype="<f4")).cast("B"))

        if not dst.parent.is_dir():
            raise InputError(f"{dst.parent}: output folder does not exist")
        atomic_write(dst, write)
    return dst


def apply_faiss(bridge: Bridge, index, normalize: bool = True, block: int | None = None):
    """A new faiss flat index (same metric) holding the bridged vectors of a flat ``index``, built block by block."""
    import faiss

    if not isinstance(index, faiss.IndexFlat):
        raise InputError(f"apply_faiss: needs a flat faiss index (IndexFlatIP / IndexFlatL2), got {type(index).__name__}")
    _check_width(bridge, index.d, "the faiss index")
    out = faiss.IndexFlat(bridge.d_out, index.metric_type)
    block = block or block_rows(max(bridge.d_in, bridge.d_out))
    for s in range(0, index.ntotal, block):
        out.add(_carry(bridge, index.reconstruct_n(s, min(block, index.ntotal - s)), normalize))
    return out


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".npy", ".json") else p
    return stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + ".json")


def save(bridge: Bridge, path: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``PATH.npy`` (the float64 matrix) and ``PATH.json`` (method, direction, dimensions, fit items,
    sha256 of the .npy), each atomically; the sidecar is written last, so a map without one is incomplete."""
    npy, side = _paths(path)
    buf = io.BytesIO()
    np.save(buf, bridge.matrix, allow_pickle=False)
    data = buf.getvalue()
    npy.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(npy, data)
    atomic_write_json(side, bridge.sidecar(npy.name, hashlib.sha256(data).hexdigest()))
    return npy, side


def load(path: str | os.PathLike) -> Bridge:
    """Read a saved bridge, checking its sidecar, checksum, shape and values."""
    npy, side = _paths(path)
    if not side.is_file():
        raise InputError(f"{side}: bridge sidecar does not exist")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{side}: cannot read the bridge sidecar ({type(exc).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{side}: not a {FORMAT} sidecar")
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{side}: sidecar format version {meta.get('format_version')} is not supported (this version reads {FORMAT_VERSION})")
    if not npy.is_file():
        raise InputError(f"{npy}: bridge matrix does not exist")
    data = npy.read_bytes()
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise InputError(f"{npy}: checksum mismatch with {side.name} (the matrix was changed or truncated)")
    try:
        matrix = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        raise InputError(f"{npy}: cannot read the bridge matrix ({type(exc).__name__})") from None
    matrix = check_matrix(matrix, str(npy))
    if matrix.shape != (meta.get("d_in"), meta.get("d_out")):
        raise InputError(f"{npy}: matrix has shape {matrix.shape} but {side.name} says {meta.get('d_in')} x {meta.get('d_out')}")
    try:
        return Bridge(matrix, meta["method"], meta["direction"], meta.get("modality"), int(meta.get("n_fit") or 0),
                      meta.get("fit_rows"), meta.get("ridge"))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise InputError(f"{side}: {exc}") from None
        raise InputError(f"{side}: incomplete sidecar ({type(exc).__name__}: {exc})") from None


# ---------------------------------------------------------------- measuring a bridge on probe items (sd-analyze bridge)


def evaluate_comparison(comparison, methods=METHODS, directions=DIRECTIONS, fraction: float = DEFAULT_FRACTION,
                        seed: int = 0, ridge: float = DEFAULT_RIDGE, curve: bool = False):
    """Fit and score every (method, direction) on one reference/candidate pair of a probe set (``gate.inputs.Comparison``).

    Returns ``(BridgeEvaluation, learning-curve DataFrame or None)``.
    """
    ev = evaluate_bridge(comparison.reference, comparison.candidate, comparison.text_to_image, methods=methods,
                         directions=directions, fraction=fraction, seed=seed, ridge=ridge, default=(methods[0], directions[0]))
    lc = None
    if curve:
        lc = learning_curve(comparison.reference, comparison.candidate, comparison.text_to_image, methods=methods,
                            directions=directions, fraction=fraction, seed=seed, ridge=ridge)
    return ev, lc


def _pct(v) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{v:5.1f}"


def _frac(v) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{v:.3f}"


def format_evaluation(ev: BridgeEvaluation, title: str) -> str:
    """A plain-text table: R@1 per direction, recovery, agreement and BCT per setting, on the held-out items."""
    t = ev.table
    head = (f"{title}: {int(t['fit_images'].iloc[0])} calibration images, {int(t['held_images'].iloc[0])} held out "
            f"({int(t['held_texts'].iloc[0])} captions)")
    cols = f"{'setting':<26} {'t2i R@1':>7} {'i2t R@1':>7} {'rec t2i':>7} {'rec i2t':>7} {'agr img':>7} {'agr txt':>7}  BCT t2i/i2t"
    lines = [head, cols]
    for r in t.to_dict("records"):
        bct = "" if not np.isfinite(r.get("t2i_bct", np.nan)) else \
            f"{'yes' if r['t2i_bct'] else 'no'}/{'yes' if r['i2t_bct'] else 'no'}"
        lines.append(f"{r['setting']:<26} {_pct(r['t2i_R@1']):>7} {_pct(r['i2t_R@1']):>7} {_frac(r.get('t2i_R@1_recovery')):>7} "
                     f"{_frac(r.get('i2t_R@1_recovery')):>7} {_frac(r.get('image_agreement')):>7} {_frac(r.get('text_agreement')):>7}  {bct}")
    for (method, direction), why in ev.skipped.items():
        lines.append(f"bridge {method} {direction}: skipped ({why})")
    return "\n".join(lines)


def format_curve(curve) -> str:
    lines = [f"{'calibration images':>18} {'method':<10} {'direction':<9} {'rec t2i':>7} {'rec i2t':>7} {'agr img':>7} {'agr txt':>7}"]
    for r in curve.to_dict("records"):
        lines.append(f"{r['calibration_images']:>18} {r['method']:<10} {r['direction']:<9} {_frac(r.get('t2i_R@1_recovery')):>7} "
                     f"{_frac(r.get('i2t_R@1_recovery')):>7} {_frac(r.get('image_agreement')):>7} {_frac(r.get('text_agreement')):>7}"
                     + (f"  {r['note']}" if isinstance(r.get("note"), str) and r["note"] else ""))
    return "\n".join(lines)


def evaluation_bridges(ev: BridgeEvaluation, ridge: float = DEFAULT_RIDGE) -> dict[str, Bridge]:
    """Every fitted map of an evaluation as a ``Bridge``, keyed ``<modality>-<method>-<direction>``."""
    out = {}
    for (method, direction), maps in ev.maps.items():
        for modality, rows in (("image", maps.fit_images), ("text", maps.fit_texts)):
            out[f"{modality}-{method}-{direction}"] = Bridge(getattr(maps, modality), method, direction, modality, len(rows),
                                                             [int(r) for r in rows], ridge if method == "ridge" else None)
    return out


def save_evaluation(folder: str | os.PathLike, ev: BridgeEvaluation, curve=None, ridge: float = DEFAULT_RIDGE) -> list[Path]:
    """Write every fitted map (``.npy`` + ``.json``), ``bridge.csv`` and ``learning_curve.csv`` into ``folder``."""
    folder = Path(folder)
    written = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, b in evaluation_bridges(ev, ridge).items():
            written.extend(save(b, folder / name))
        atomic_write_bytes(folder / "bridge.csv", ev.table.to_csv(index=False).encode("utf-8"))
        written.append(folder / "bridge.csv")
        if curve is not None:
            atomic_write_bytes(folder / "learning_curve.csv", curve.to_csv(index=False).encode("utf-8"))
            written.append(folder / "learning_curve.csv")
    except OSError as exc:
        raise InputError(f"{folder}: cannot write the bridge ({exc.strerror or exc})") from None
    return written
