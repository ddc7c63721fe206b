"""Data sets rendered from the scene world, one module per kind, each with `write(out, n, seed, size)`.

The kind `location` (boxes to place an object, in OPA's layout) is written by opa_layout.py.

`python -m trainer scenes <kind> --out DIR --n N --seed S` calls them.
"""

from . import layout, multiview, opa_layout, preference, removal

KINDS = {"location": opa_layout, "removal": removal, "preference": preference, "multiview": multiview,
         "layout": layout}
