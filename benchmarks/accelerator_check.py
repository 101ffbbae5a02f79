"""``python benchmarks/accelerator_check.py ...``: the check to run on a machine with a GPU or TPU (``jaxres/tools/accelerator_check.py``)."""

import os
import sys

if __name__ == '__main__':
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from jaxres import console
    console.quiet_native_startup(os.environ, sys.argv)  # before TensorFlow is imported
    from jaxres.tools import accelerator_check
    sys.exit(accelerator_check.main())
