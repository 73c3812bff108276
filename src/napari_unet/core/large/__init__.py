"""Large images block by block: in this process (regions) or on dask.distributed (distributed,
which needs the ``distributed`` extra and is imported only by those who use it)."""
