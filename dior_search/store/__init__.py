"""The index store: sharded FAISS indexes with Parquet tables and a manifest, on disk.

`layout` is the one place that knows where an index lives
(`indexes/<collection>/<embedder>/<condition>`); `writer` and `reader` are the only ways in
and out of an index directory; `index_types` and `packing` choose and build compressed types.
"""
