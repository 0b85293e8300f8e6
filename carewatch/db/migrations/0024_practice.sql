-- Practice mode for new staff, and residents' photos for the kit banner (issue 17). Practice mode: one practice resident per care home, measured with a practice kit whose
-- devices the simulator drives through the same kit-session path, and asked to deteriorate so a new carer can
-- walk a round, see a worrying score, read the SBARD call script and acknowledge the alert. Practice data never
-- reaches real views, exports, reports, adoption figures or notifications: the API's scope predicates show it
-- only to a tablet in practice mode (api/scope.py), the escalation pass skips it (notify/escalation.py).
-- docs/kits.md "Practice mode", docs/clinical-safety.md H-KIT-07.

ALTER TABLE residents ADD COLUMN practice boolean NOT NULL DEFAULT false;
-- What the simulator makes the practice resident's vitals do: 'well', or 'deteriorating' when a trainer asks.
ALTER TABLE residents ADD COLUMN practice_condition text NOT NULL DEFAULT 'well'
    CHECK (practice_condition IN ('well', 'deteriorating'));
ALTER TABLE residents ADD CONSTRAINT residents_practice_has_no_nhs_number CHECK (NOT practice OR nhs_number IS NULL);
CREATE UNIQUE INDEX residents_one_practice_per_site ON residents (site_id) WHERE practice;

-- A practice kit measures only the practice resident, and a real kit only real residents (api/routes_kits.py).
ALTER TABLE kits ADD COLUMN practice boolean NOT NULL DEFAULT false;
CREATE UNIQUE INDEX kits_one_practice_per_site ON kits (site_id) WHERE practice;

-- Where the home keeps a photo of the resident (an https address in its own photo store): shown on the kit
-- session's banner so the carer checks the face as well as the name and date of birth (H-KIT-04).
ALTER TABLE residents ADD COLUMN photo_url text CHECK (photo_url IS NULL OR photo_url ~ '^https://');
