"""Course authoring: student versions, synced syllabus blocks, slides, the offline site.

Usage::

    python -m mpcourse.authoring students _students   # notebooks without solutions
    python -m mpcourse.authoring slides                # slide metadata for new cells
    mpcourse site _site                                # the static site (mpcourse.authoring.site)

Never imported by the library: only the ``mpcourse`` command and the tests reach it.
"""
