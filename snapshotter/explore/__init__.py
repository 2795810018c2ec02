"""Questions about stored images, answered without mounting, over ``view`` and ``store``.

Pure: these modules compute answers as plain records and never print; ``cli`` formats
them as tables or JSON.  Every answer about the files of an image comes from the merged
tree the mount serves (``view``), every answer about a layer from its toc, so the
commands and the mount never disagree.

- ``image``: a stored image opened for exploring (``StoredImage``): config, layers
  numbered from 1 with the history entries that made them, tocs, merged views as of any
  layer, content digests.
- ``history``, ``inspect``, ``remote``: docker's history and inspect, of stored images
  and of images still in a registry (manifest and config only).
- ``files``: paths resolved inside the image as a chroot would, listings, file content.
- ``blame``: every layer that added, changed or deleted a path.
- ``diff``: what a layer changed; two images' merged views, configs and histories.
- ``du``, ``wasted``: bytes per directory and per layer; dive's efficiency, waste and CI
  rules, and what a layer ships that the view hides.
- ``export``: the merged view as one PAX tar.
"""
