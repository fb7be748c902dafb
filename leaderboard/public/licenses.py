"""License families for the ranking's license filter: permissive, restrictive or unknown.

Permissive: OSI-style licenses that allow commercial use, modification and redistribution with
at most attribution. Restrictive: anything that adds use restrictions (RAIL/OpenRAIL, vendor
community licenses such as Llama's or Gemma's), forbids commercial use (CC BY-NC), forbids
derivatives (ND) or requires derivatives to share the license (GPL family, CC BY-SA). Unknown:
empty, `other`, `unknown`, or any identifier not listed here. docs/ui.md prints this table."""

from __future__ import annotations

PERMISSIVE = frozenset(
    {
        "apache-2.0",
        "mit",
        "bsd",
        "bsd-2-clause",
        "bsd-3-clause",
        "bsd-3-clause-clear",
        "isc",
        "zlib",
        "bsl-1.0",
        "unlicense",
        "cc0-1.0",
        "cc-by-2.0",
        "cc-by-3.0",
        "cc-by-4.0",
        "odc-by",
        "pddl",
        "postgresql",
        "wtfpl",
        "afl-3.0",
        "ecl-2.0",
        "ms-pl",
        "ncsa",
        "upl-1.0",
    }
)

RESTRICTIVE = frozenset(
    {
        # Use-based restrictions
        "openrail",
        "openrail++",
        "creativeml-openrail-m",
        "bigscience-openrail-m",
        "bigscience-bloom-rail-1.0",
        "bigcode-openrail-m",
        "llama2",
        "llama3",
        "llama3.1",
        "llama3.2",
        "llama3.3",
        "llama4",
        "gemma",
        "deepseek",
        "apple-ascl",
        "apple-amlr",
        "intel-research",
        "lgpl-lr",
        "h-research",
        "fair-noncommercial-research-license",
        # Non-commercial or no-derivatives
        "cc-by-nc-2.0",
        "cc-by-nc-3.0",
        "cc-by-nc-4.0",
        "cc-by-nc-nd-3.0",
        "cc-by-nc-nd-4.0",
        "cc-by-nc-sa-2.0",
        "cc-by-nc-sa-3.0",
        "cc-by-nc-sa-4.0",
        "cc-by-nd-4.0",
        "c-uda",
        # Copyleft: derivatives must carry the same license
        "gpl",
        "gpl-2.0",
        "gpl-3.0",
        "agpl-3.0",
        "lgpl",
        "lgpl-2.1",
        "lgpl-3.0",
        "mpl-2.0",
        "epl-1.0",
        "epl-2.0",
        "eupl-1.1",
        "eupl-1.2",
        "osl-3.0",
        "cc-by-sa-3.0",
        "cc-by-sa-4.0",
        "odbl",
        "gfdl",
    }
)


def license_family(license_id: str) -> str:
    """The family of a Hub license identifier (case-insensitive); `unknown` when unlisted."""
    normalized = (license_id or "").strip().lower()
    if normalized in PERMISSIVE:
        return "permissive"
    if normalized in RESTRICTIVE:
        return "restrictive"
    return "unknown"
