from tests.gateway.conftest import fleet  # noqa: F401
from tests.gateway.test_cli_faults import down  # noqa: F401
from tests.scheduling_e2e.conftest import echo_fleet  # noqa: F401
