"""``python -m overlay.cni``: the overlay-cni plugin (see overlay.cni.plugin)."""

from overlay.cni.plugin import main

main()
