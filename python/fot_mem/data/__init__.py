"""What training and evaluation both read: token shards, crossbatch batches and the dictionary
lookup task. Below `train` and `eval`, so that neither imports the other."""
