"""Deploy: any registry model over the OpenAI HTTP API (`llmctl serve`)."""
