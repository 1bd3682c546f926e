"""`python -m efficientnet`: prints the model table (see efficientnet/table.py)."""
from efficientnet import table

if __name__ == "__main__":
  table.run()
