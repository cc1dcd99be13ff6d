"""Reading ext2/3/4 file systems straight out of a commit's disk image, block by block, without
exporting or mounting it (``vers diff --files`` is the first user)."""
