"""initial schema: jobs, parties, tasks, party tasks, history, components, tokens

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-30 09:37:31.869286
"""
import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('components',
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('entrypoint', sa.String(length=300), nullable=False),
    sa.Column('added_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name', 'version')
    )
    op.create_table('jobs',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('initiator', sa.String(length=63), nullable=False),
    sa.Column('scheduler', sa.String(length=63), nullable=False),
    sa.Column('sync_mode', sa.String(length=16), nullable=False),
    sa.Column('spec_json', sa.Text(), nullable=False),
    sa.Column('state', sa.String(length=32), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_jobs_state'), ['state'], unique=False)

    op.create_table('state_changes',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=64), nullable=False),
    sa.Column('entity', sa.String(length=16), nullable=False),
    sa.Column('task', sa.String(length=63), nullable=True),
    sa.Column('party', sa.String(length=63), nullable=True),
    sa.Column('from_state', sa.String(length=32), nullable=True),
    sa.Column('to_state', sa.String(length=32), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('state_changes', schema=None) as batch_op:
        batch_op.create_index('ix_state_changes_job', ['job_id', 'id'], unique=False)

    op.create_table('tokens',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash', name='uq_tokens_hash')
    )
    op.create_table('job_parties',
    sa.Column('job_id', sa.String(length=64), nullable=False),
    sa.Column('party', sa.String(length=63), nullable=False),
    sa.Column('site_url', sa.String(length=300), nullable=False),
    sa.Column('holds_data', sa.Boolean(), nullable=False),
    sa.Column('approval', sa.String(length=32), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'party')
    )
    with op.batch_alter_table('job_parties', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_job_parties_approval'), ['approval'], unique=False)

    op.create_table('tasks',
    sa.Column('job_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('component', sa.String(length=63), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=32), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('retries', sa.Integer(), nullable=False),
    sa.Column('timeout_s', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'name')
    )
    op.create_table('party_tasks',
    sa.Column('job_id', sa.String(length=64), nullable=False),
    sa.Column('task', sa.String(length=63), nullable=False),
    sa.Column('party', sa.String(length=63), nullable=False),
    sa.Column('state', sa.String(length=32), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id', 'task'], ['tasks.job_id', 'tasks.name'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'task', 'party')
    )


def downgrade() -> None:
    op.drop_table('party_tasks')
    op.drop_table('tasks')
    with op.batch_alter_table('job_parties', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_job_parties_approval'))

    op.drop_table('job_parties')
    op.drop_table('tokens')
    with op.batch_alter_table('state_changes', schema=None) as batch_op:
        batch_op.drop_index('ix_state_changes_job')

    op.drop_table('state_changes')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_jobs_state'))

    op.drop_table('jobs')
    op.drop_table('components')
