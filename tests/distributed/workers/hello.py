"""Worker: joins the group through advjax's settings and all-gathers each process's index."""
import os
import sys

from advjax import parallel

assert parallel.initialize_distributed(), "ADVJAX_* settings were not picked up"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

if len(sys.argv) > 1 and int(sys.argv[1]) == jax.process_index():
    # A failing process leaves at once (os._exit): a normal exit would wait in jax.distributed's
    # shutdown barrier for the others, which wait for it in their next collective.
    print(f"process {jax.process_index()} fails on purpose", file=sys.stderr, flush=True)
    os._exit(3)
gathered = multihost_utils.process_allgather(np.asarray([jax.process_index()]))
print("RESULT", jax.process_index(), jax.process_count(), jax.device_count(),
      jax.local_device_count(), gathered.reshape(-1).tolist())
