"""The search layer: one `Searcher` over a collection's indexes, used by `query`, `serve` and
`bench`; `joined` ranks by several conditions at once."""
