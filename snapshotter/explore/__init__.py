"""Questions about stored images, answered without mounting, over ``view`` and ``store``.

Pure: these modules compute answers as plain records and never print; ``cli`` formats
them as tables or JSON.
"""
