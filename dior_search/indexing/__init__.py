"""The `index` stage: embed a collection under conditions into index directories.

`run.index_collection` is the entry point; `job` holds what one run embeds and how it adds
vectors to the writers; `parts` splits a run over processes (`accelerate launch`).
"""
