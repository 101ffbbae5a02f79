"""``python benchmarks/airbench_ref.py ...``: airbench94_muon's own training code on the CPU, the reference figure R (``jaxres/tools/airbench_ref.py``)."""

import os
import sys

if __name__ == '__main__':
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from jaxres import console
    console.quiet_native_startup(os.environ, sys.argv)  # before TensorFlow is imported
    from jaxres.tools import airbench_ref
    sys.exit(airbench_ref.main())
