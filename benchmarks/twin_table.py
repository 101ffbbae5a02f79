"""``python benchmarks/twin_table.py ...``: the twin runs' table of record (``jaxres/tools/twin_table.py``)."""

import os
import sys

if __name__ == '__main__':
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from jaxres import console
    console.quiet_native_startup(os.environ, sys.argv)  # before TensorFlow is imported
    from jaxres.tools import twin_table
    sys.exit(twin_table.main())
