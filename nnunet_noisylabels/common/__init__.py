"""What every stage uses: raw-dataset IO and checks, metrics, file-system steps that never lose a user's file,
synthetic datasets, trainer budgets. Imports nothing else of this package."""
