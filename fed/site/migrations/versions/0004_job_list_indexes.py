"""job lists: indexes for the newest-first list, with and without a state filter

The client API and the board list jobs newest first (``ORDER BY created_at DESC, id
DESC LIMIT n``), optionally of one state; without these indexes each list sorts the
whole jobs table (benchmarks/sites.py, 10,000 jobs).

Revision ID: 0004
Revises: 0003
"""
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_jobs_created', 'jobs', ['created_at', 'id'])
    op.create_index('ix_jobs_state_created', 'jobs', ['state', 'created_at', 'id'])


def downgrade() -> None:
    op.drop_index('ix_jobs_state_created', table_name='jobs')
    op.drop_index('ix_jobs_created', table_name='jobs')
