import * as migration_20261206_040230_initial from './20261206_040230_initial'

export const migrations = [
  {
    up: migration_20261206_040230_initial.up,
    down: migration_20261206_040230_initial.down,
    name: '20261206_040230_initial',
  },
]
