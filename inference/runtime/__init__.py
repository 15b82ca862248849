"""The engine room: which files are models, which are loaded, the threads that own them, and
the llama.cpp calls that run them. Nothing here imports the HTTP layer or the ORM."""
