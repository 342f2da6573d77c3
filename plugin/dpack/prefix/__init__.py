"""The D-PACK model on a flow's first packets: network, model file, training set, training, scorer."""
