"""``make test-timm``: timm's own ``tests/test_models.py``, unmodified but for the zoo's entries in its filter lists.

Steps, each visible in the output:

1. fetch the source distribution of the *installed* timm version from the package registry
   (``pip download --no-deps --no-binary :all: timm==<version>``) into ``.timm-suite/`` (kept between runs);
2. take ``tests/test_models.py`` out of it and add the zoo's modules to ``FEAT_INTER_FILTERS`` and the zoo's
   non-standard (ViT-like) models to ``NON_STD_FILTERS``, the edit a timm pull request adding a family makes;
   nothing else in the file changes, and the patch fails loudly if timm's file no longer has those lists;
3. run it with pytest and ``tests.timm_suite.plugin``, which imports visionzoo, keeps the cases of zoo models and
   classifies the few documented, allowed failures (see that module).

Extra arguments go to pytest (``make test-timm ARGS="-k biformer"``).
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / ".timm-suite"

# The patch: what a timm PR registering these families would add to the two lists.
FEAT_INTER_MODULES = ["biformer", "herseg", "qtseg", "reid", "sparsifiner", "vit_llm"]
NON_STD_PATTERNS = ["sparsifiner_*"]  # DeiT-like, as timm lists 'deit*'; vit_*_llm already matches 'vit_*'


def fetch_sdist(version: str) -> Path:
    """The timm sdist for ``version`` in ``.timm-suite/`` (downloaded once)."""
    WORK.mkdir(exist_ok=True)
    archive = WORK / f"timm-{version}.tar.gz"
    if not archive.exists():
        print(f"test-timm: downloading the timm {version} source distribution", flush=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"timm=={version}",
                "-d",
                str(WORK),
            ],
            check=True,
        )
    if not archive.exists():
        raise SystemExit(
            f"test-timm: pip did not produce {archive.name}; expected the timm {version} sdist there."
        )
    return archive


def extract_test_file(archive: Path, version: str) -> str:
    member = f"timm-{version}/tests/test_models.py"
    with tarfile.open(archive) as tar:
        try:
            return tar.extractfile(member).read().decode()
        except KeyError:
            raise SystemExit(
                f"test-timm: {archive.name} has no {member}; expected timm's model tests there."
            ) from None


def add_to_list(source: str, list_name: str, entries: list[str]) -> str:
    """Insert ``entries`` at the top of the module-level list ``list_name = [``; exactly one such list must exist."""
    pattern = re.compile(rf"^{list_name} = \[\n", re.MULTILINE)
    if len(pattern.findall(source)) != 1:
        raise SystemExit(f"test-timm: timm's test_models.py has no single '{list_name} = [' list to extend.")
    added = "    " + ", ".join(repr(e) for e in entries) + ",  # visionzoo\n"
    return pattern.sub(lambda m: m.group(0) + added, source, count=1)


def patched_test_file(version: str) -> Path:
    source = extract_test_file(fetch_sdist(version), version)
    source = add_to_list(source, "FEAT_INTER_FILTERS", FEAT_INTER_MODULES)
    source = add_to_list(source, "NON_STD_FILTERS", NON_STD_PATTERNS)
    out_dir = WORK / f"timm-{version}-tests"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "pytest.ini").write_text(
        "[pytest]\n"
        "filterwarnings =\n    ignore::DeprecationWarning\n    ignore::pytest.PytestUnknownMarkWarning\n"
    )
    path = out_dir / "test_models.py"
    path.write_text(source)
    print(
        f"test-timm: {path.relative_to(REPO)} = timm {version}'s file + the zoo in FEAT_INTER_FILTERS "
        f"({', '.join(FEAT_INTER_MODULES)}) and NON_STD_FILTERS ({', '.join(NON_STD_PATTERNS)})",
        flush=True,
    )
    return path


def main(argv: list[str]) -> int:
    version = importlib.metadata.version("timm")
    test_file = patched_test_file(version)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(test_file),
        "-c",
        str(test_file.parent / "pytest.ini"),
        "--rootdir",
        str(test_file.parent),
        "-p",
        "tests.timm_suite.plugin",
        "-p",
        "no:cacheprovider",
        "-q",
        "-rfEx",
        *argv,
    ]
    return subprocess.run(cmd, cwd=REPO).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
