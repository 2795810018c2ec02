"""The terminal browser: ``snapshotter browse IMAGE``, dive's screen over the explore wing.

``model`` holds everything the screen shows as plain data (layers, the compared tree and
its rows, file contents a page at a time) and imports no textual; ``app`` draws it with
textual, which nothing else in the package imports.
"""
