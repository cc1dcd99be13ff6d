"""``vers mcp serve``: the verbs an agent needs, as tools of a Model Context Protocol server
(``vers.mcp.server``), for one repository."""
