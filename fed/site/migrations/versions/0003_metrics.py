"""metrics from components: metric_points, metric_sources, components.share_metrics

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('components', schema=None) as batch_op:
        batch_op.add_column(sa.Column('share_metrics', sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_table('metric_points',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=64), nullable=False),
    sa.Column('task', sa.String(length=63), nullable=False),
    sa.Column('party', sa.String(length=63), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('step', sa.BigInteger(), nullable=True),
    sa.Column('value', sa.Float(), nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['job_id', 'task'], ['tasks.job_id', 'tasks.name'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('metric_points', schema=None) as batch_op:
        batch_op.create_index('ix_metric_points_series', ['job_id', 'party', 'task', 'name', 'id'], unique=False)
    op.create_table('metric_sources',
    sa.Column('job_id', sa.String(length=64), nullable=False),
    sa.Column('task', sa.String(length=63), nullable=False),
    sa.Column('party', sa.String(length=63), nullable=False),
    sa.Column('offset', sa.BigInteger(), nullable=False),
    sa.Column('skipping', sa.Boolean(), nullable=False),
    sa.Column('points', sa.Integer(), nullable=False),
    sa.Column('bad_lines', sa.Integer(), nullable=False),
    sa.Column('dropped', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['job_id', 'task'], ['tasks.job_id', 'tasks.name'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'task', 'party')
    )


def downgrade() -> None:
    op.drop_table('metric_sources')
    with op.batch_alter_table('metric_points', schema=None) as batch_op:
        batch_op.drop_index('ix_metric_points_series')
    op.drop_table('metric_points')
    with op.batch_alter_table('components', schema=None) as batch_op:
        batch_op.drop_column('share_metrics')
