"""Training over several processes: the communicator contract (``comm``), the launch
environment (``launch``), data parallelism (``data_parallel``). Importing this package
needs neither mpi4py nor CuPy; each backend imports its library when it is built."""
from .comm import (DEFAULT_TIMEOUT, Communicator, MPICommunicator, Pending, SingleProcess,
                   from_environment, mpi_launched)
from .errors import CollectiveTimeout, ConfigMismatch
from .data_parallel import DataParallel

__all__ = ["DEFAULT_TIMEOUT", "CollectiveTimeout", "Communicator", "ConfigMismatch", "DataParallel",
           "MPICommunicator", "Pending", "SingleProcess", "from_environment", "mpi_launched"]
