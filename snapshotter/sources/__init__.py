"""Where images come from, over ``store`` and ``oci``.

- ``transports``: image sources on disk (oci, oci-archive, docker-archive) and the
  resolution of a source string to an image or index.
- ``registry``: the OCI distribution API client (the only user of httpx).
- ``pull``: resolve, unpack concurrently (trio), commit.
"""
