"""`bridge dev` / `bridge run`: the whole bridge in one command, for a first try or a laptop."""
