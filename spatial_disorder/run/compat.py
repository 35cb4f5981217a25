"""Whether two runs measured the same probe items: the one check behind `sd-analyze compare` and `check --reference`."""

from __future__ import annotations

from ..errors import InputError


def check_same_items(reference, candidate, probes=None, purpose: str = "compare") -> None:
    """Refuse ``candidate`` unless its probe sets hold the same items, in the same order, as ``reference``.

    ``probes`` limits the check to those probe sets (each must exist in both runs); by default both runs must
    have the same probe sets. Every refusal is one ``InputError`` line naming the candidate run.
    """
    if probes is None:
        a, b = sorted(reference.probes), sorted(candidate.probes)
        if a != b:
            raise InputError(f"{candidate.path}: probe sets differ from {reference.path} ({', '.join(b)} vs {', '.join(a)}); "
                             f"{purpose} needs the same probe sets")
        names = a
    else:
        names = list(probes)
    for name in names:
        if name not in candidate.probes:
            raise InputError(f"{candidate.path}: has no probe set {name!r} (it has {list(candidate.probes)})")
        pa, pb = reference.probes[name], candidate.probes[name]
        for mod, ta, tb in (("image", pa.images, pb.images), ("text", pa.texts, pb.texts)):
            if ta["id"].astype(str).tolist() != tb["id"].astype(str).tolist():
                raise InputError(f"{candidate.path}: probe set {name!r} holds different {mod} items than {reference.path}; "
                                 f"{purpose} needs the same items")
