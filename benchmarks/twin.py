"""``python benchmarks/twin.py ...``: the twin runs, a jaxres recipe beside a PyTorch port of its seed (``jaxres/tools/twin.py``)."""

import os
import sys

if __name__ == '__main__':
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from jaxres import console
    console.quiet_native_startup(os.environ, sys.argv)  # before TensorFlow is imported
    from jaxres.tools import twin
    sys.exit(twin.main())
