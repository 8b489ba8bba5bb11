"""Collections: named datasets and image folders, their labels, and reading their images."""
