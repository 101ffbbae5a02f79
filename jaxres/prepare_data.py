"""``python -m jaxres.prepare_data``: local archives or image folders -> a TFDS data set
(the command of ``jaxres/data/prepare.py``)."""

import sys

if __name__ == '__main__':
    from jaxres.data import prepare
    sys.exit(prepare.main())
