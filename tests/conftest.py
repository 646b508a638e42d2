import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/reference.py and friends


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", help="rewrite tests/golden/* from current output")
    parser.addoption("--vector-width", type=int, choices=(4, 8, 16), default=None,
                     help="vector width of the tests' schedules (default: the host's)")


def pytest_configure(config):
    import widths

    widths.FORCED = config.getoption("--vector-width")


def pytest_report_header(config):
    import widths

    return f"convdsl vector width: {widths.vec().vector_width}" + (" (forced)" if widths.FORCED else " (host)")


@pytest.fixture
def update_golden(request):
    return request.config.getoption("--update-golden")


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Tests never read or write the user's real cache directory."""
    old = os.environ.get("CONVDSL_CACHE_DIR")
    os.environ["CONVDSL_CACHE_DIR"] = str(tmp_path_factory.mktemp("convdsl-cache"))
    yield
    if old is None:
        os.environ.pop("CONVDSL_CACHE_DIR", None)
    else:
        os.environ["CONVDSL_CACHE_DIR"] = old
