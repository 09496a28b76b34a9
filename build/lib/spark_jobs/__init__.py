"""Spark jobs: each module reads, applies pure ``transform_*`` functions, writes, and has a ``main()`` for spark-submit."""
