"""Data sets rendered from the scene world, one module per kind, each with `write(out, n, seed, size)`.

`python -m trainer scenes <kind> --out DIR --n N --seed S` calls them.
"""

from . import layout, location, multiview, preference, removal

KINDS = {"location": location, "removal": removal, "preference": preference, "multiview": multiview,
         "layout": layout}
