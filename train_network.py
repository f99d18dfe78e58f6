"""Root shim so `python train_network.py …` and `accelerate launch train_network.py …` work (kohya-compat)."""

from sd_train.train_network import main

if __name__ == "__main__":
    main()
