"""`python -m noisy_student` runs the same program as the `noisy-student` command."""
from noisy_student.main import run

if __name__ == "__main__":
  run()
