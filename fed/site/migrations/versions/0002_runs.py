"""runs: party task attempts, channel ports, ports held, the outbox of undelivered calls

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 13:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('party_tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('attempt', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('port', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('submission_id', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('started_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('log_tail', sa.Text(), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('addresses', sa.Text(), nullable=False, server_default=''))
    op.create_table('channel_ports',
    sa.Column('port', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('job_id', sa.String(length=64), nullable=False),
    sa.Column('task', sa.String(length=63), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('port')
    )
    op.create_table('outbox',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=64), nullable=False),
    sa.Column('party', sa.String(length=63), nullable=False),
    sa.Column('url', sa.String(length=300), nullable=False),
    sa.Column('path', sa.String(length=300), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_party', ['party', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_party')
    op.drop_table('outbox')
    op.drop_table('channel_ports')
    with op.batch_alter_table('party_tasks', schema=None) as batch_op:
        batch_op.drop_column('addresses')
        batch_op.drop_column('log_tail')
        batch_op.drop_column('started_at')
        batch_op.drop_column('submission_id')
        batch_op.drop_column('port')
        batch_op.drop_column('attempt')
