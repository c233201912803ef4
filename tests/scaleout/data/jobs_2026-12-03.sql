-- schema written by segloop as of 2026-12-03 (commit c1e1dfe), before Alembic
CREATE TABLE jobs (
	id VARCHAR(32) NOT NULL, 
	kind VARCHAR(32) NOT NULL, 
	params TEXT NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	progress FLOAT NOT NULL, 
	message TEXT NOT NULL, 
	detail TEXT NOT NULL, 
	result TEXT, 
	error TEXT, 
	owner VARCHAR(128), 
	resource VARCHAR(256), 
	runner VARCHAR(256), 
	cancel_requested BOOLEAN NOT NULL, 
	created_at DATETIME NOT NULL, 
	started_at DATETIME, 
	finished_at DATETIME, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_jobs_kind ON jobs (kind);
CREATE INDEX ix_jobs_resource ON jobs (resource);
CREATE INDEX ix_jobs_state ON jobs (state);
CREATE TABLE evaluations (
	id VARCHAR(32) NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	params TEXT NOT NULL, 
	result TEXT NOT NULL, 
	discrepancy TEXT, 
	author VARCHAR(128), 
	job_id VARCHAR(32), 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_evaluations_created_at ON evaluations (created_at);
CREATE TABLE job_metrics (
	job_id VARCHAR(32) NOT NULL, 
	seq INTEGER NOT NULL, 
	time DATETIME NOT NULL, 
	data TEXT NOT NULL, 
	PRIMARY KEY (job_id, seq), 
	FOREIGN KEY(job_id) REFERENCES jobs (id) ON DELETE CASCADE
);
CREATE TABLE job_log (
	job_id VARCHAR(32) NOT NULL, 
	seq INTEGER NOT NULL, 
	time DATETIME NOT NULL, 
	line TEXT NOT NULL, 
	PRIMARY KEY (job_id, seq), 
	FOREIGN KEY(job_id) REFERENCES jobs (id) ON DELETE CASCADE
);
