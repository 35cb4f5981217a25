"""JUnit XML for CI systems: one test case per (check, probe, modality); failures for failed checks."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from .evaluate import CheckResult, counts


def junit_xml(results: list[CheckResult], suite: str = "sd-analyze check", elapsed_s: float = 0.0) -> bytes:
    """A ``<testsuites>`` document; warnings pass but carry their message in ``<system-out>``."""
    c = counts(results)
    root = ET.Element("testsuites", name=suite, tests=str(len(results)), failures=str(c["fail"]), errors="0", time=f"{elapsed_s:.3f}")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(results)), failures=str(c["fail"]), errors="0", skipped="0",
                       time=f"{elapsed_s:.3f}")
    for r in results:
        case = ET.SubElement(ts, "testcase", classname=f"spatial_disorder.gate.{r.probe}.{r.modality}",
                             name=f"{r.check.label} [{r.where}]", time="0")
        if r.status == "fail":
            failure = ET.SubElement(case, "failure", message=r.line(), type="threshold")
            failure.text = r.line()
        elif r.status == "warn":
            out = ET.SubElement(case, "system-out")
            out.text = "warning: " + r.line()
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"
