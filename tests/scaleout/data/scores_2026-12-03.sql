-- schema written by segloop as of 2026-12-03 (commit c1e1dfe), before Alembic
CREATE TABLE al_scores (
	image_id VARCHAR NOT NULL, 
	model VARCHAR NOT NULL, 
	version INTEGER NOT NULL, 
	strategy VARCHAR NOT NULL, 
	params VARCHAR NOT NULL, 
	score FLOAT NOT NULL, 
	computed_at VARCHAR NOT NULL, 
	PRIMARY KEY (image_id, model, version, strategy, params)
);
CREATE TABLE al_descriptors (
	image_id VARCHAR NOT NULL, 
	stamp VARCHAR NOT NULL, 
	vector BLOB NOT NULL, 
	PRIMARY KEY (image_id)
);
