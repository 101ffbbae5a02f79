"""``python -m jaxres.bench``: the command of the step benchmark (``jaxres/tools/bench.py``)."""

import os
import sys

if __name__ == '__main__':
    # Before JAX and TensorFlow are imported: their start-up lines, and the huge-page
    # tunable that glibc reads only at process start.
    from jaxres import console
    from jaxres.cpu import host_memory
    console.quiet_native_startup(os.environ, sys.argv)
    host_memory.reexec_with_hugepages([sys.executable, '-m', 'jaxres.bench'] + sys.argv[1:])
    from jaxres.tools import bench
    sys.exit(bench.main())
