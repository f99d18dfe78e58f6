"""Root shim so `python sdxl_train_network.py …` and `accelerate launch sdxl_train_network.py …` work (kohya-compat)."""

from sd_train.sdxl_train_network import main

if __name__ == "__main__":
    main()
