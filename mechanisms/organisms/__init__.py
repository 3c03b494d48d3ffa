"""The shipped model organisms: builders and training commands of tiny-llava and tiny-internvl."""
