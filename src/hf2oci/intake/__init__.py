"""The hub side: the lists of repos, the hub client, file filters and the prepare hook."""
