"""Root shim so `python sdxl_train_textual_inversion.py …` and `accelerate launch sdxl_train_textual_inversion.py …` work (kohya-compat)."""

from sd_train.sdxl_train_textual_inversion import main

if __name__ == "__main__":
    main()
