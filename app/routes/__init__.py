"""HTTP routers, one module per resource; handlers stay short and delegate to ``app.service``."""
