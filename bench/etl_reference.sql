-- The ETL benchmark's DuckDB reference: every gold table of spark_jobs/gold.py (see bench/etl_reference.py).
-- Each '-- step:' line starts a step that is timed on its own; ${name} placeholders come from etl_reference._parameters.

-- step: read CSV
-- A line with the wrong number of fields, which silver quarantines (wrong_column_count), is dropped by the reader.
CREATE OR REPLACE TEMP TABLE raw AS SELECT * FROM read_csv(${files}, header = true, all_varchar = true, ignore_errors = true);

-- step: typing and rules
-- The rows silver keeps: none of its quarantine rules broken. A view keeps no price that is not positive and finite.
CREATE OR REPLACE TEMP TABLE typed AS
SELECT * FROM (
  SELECT try_strptime(trim(event_time), '%Y-%m-%d %H:%M:%S UTC') AS event_time, ${event_type} AS event_type,
         try_cast(trim(product_id) AS BIGINT) AS product_id, try_cast(nullif(trim(category_id), '') AS BIGINT) AS category_id,
         lower(nullif(trim(category_code), '')) AS category_code, lower(nullif(trim(brand), '')) AS brand,
         CASE WHEN isfinite(try_cast(price AS DOUBLE)) THEN try_cast(price AS DOUBLE) END AS raw_price,
         try_cast(trim(user_id) AS BIGINT) AS user_id,
         nullif(trim(user_session), '') AS user_session
  FROM raw)
WHERE event_time >= TIMESTAMP '${earliest}' AND event_time <= TIMESTAMP '${latest}' AND user_id IS NOT NULL
  AND product_id IS NOT NULL AND event_type IS NOT NULL
  AND NOT (event_type IN ('cart', 'purchase') AND (raw_price IS NULL OR raw_price <= 0));

-- step: duplicates and repeats
-- Exact duplicates fold in DISTINCT; a row within the repeat window of the previous one of the same user, item and
-- type that day is collapsed.
CREATE OR REPLACE TEMP TABLE deduped AS
SELECT * EXCLUDE (previous) FROM (
  SELECT *, lag(event_time) OVER (PARTITION BY user_id, product_id, event_type, CAST(event_time AS DATE)
                                  ORDER BY event_time, user_session NULLS FIRST, price NULLS FIRST,
                                           category_id NULLS FIRST, category_code NULLS FIRST, brand NULLS FIRST) AS previous
  FROM (SELECT DISTINCT event_time, event_type, product_id, category_id, category_code, brand,
                        CASE WHEN raw_price > 0 THEN raw_price END AS price, user_id, user_session FROM typed))
WHERE previous IS NULL OR (epoch_us(event_time) - epoch_us(previous)) / 1e6 > ${repeat_seconds};

-- step: sessions and bots
-- The shop's session id, else a new session after the inactivity gap (per user and day). Gold reads the history
-- window's events of user days that never exceed the bot rate in one window.
CREATE OR REPLACE TEMP TABLE silver AS
SELECT *, user_session AS session_id FROM deduped WHERE user_session IS NOT NULL
UNION ALL
SELECT * EXCLUDE (starts),
       'gap-' || md5(user_id || '|' || max(CASE WHEN starts THEN event_time END) OVER (
           PARTITION BY user_id, CAST(event_time AS DATE) ORDER BY event_time ROWS UNBOUNDED PRECEDING)) AS session_id
FROM (SELECT *, coalesce((epoch_us(event_time) - epoch_us(lag(event_time) OVER (
                        PARTITION BY user_id, CAST(event_time AS DATE) ORDER BY event_time))) / 1e6 > ${gap_minutes} * 60,
                       true) AS starts
      FROM deduped WHERE user_session IS NULL);
CREATE OR REPLACE TEMP TABLE events AS
SELECT s.* FROM silver s
ANTI JOIN (SELECT DISTINCT user_id, CAST(event_time AS DATE) AS event_date FROM silver
           GROUP BY user_id, CAST(event_time AS DATE), floor(epoch(event_time) / ${bot_window})
           HAVING count(*) > ${bot_max}) bots
  ON bots.user_id = s.user_id AND bots.event_date = CAST(s.event_time AS DATE)
WHERE CAST(s.event_time AS DATE) BETWEEN DATE '${first_date}' AND DATE '${as_of_date}';

-- step: items
CREATE OR REPLACE TEMP TABLE items AS
SELECT product_id AS item_id,
       struct_extract(max({'t': event_time, 'v': category_id}) FILTER (WHERE category_id IS NOT NULL), 'v') AS category_id,
       struct_extract(max({'t': event_time, 'v': category_code}) FILTER (WHERE category_code IS NOT NULL), 'v') AS category_code,
       struct_extract(max({'t': event_time, 'v': brand}) FILTER (WHERE brand IS NOT NULL), 'v') AS brand,
       struct_extract(max({'t': event_time, 'v': price}) FILTER (WHERE price IS NOT NULL), 'v') AS price
FROM events GROUP BY product_id;

-- step: interactions
CREATE OR REPLACE TEMP TABLE interactions AS
SELECT user_id, product_id AS item_id,
       count(*) FILTER (WHERE event_type = 'view') AS views, count(*) FILTER (WHERE event_type = 'cart') AS carts,
       count(*) FILTER (WHERE event_type = 'remove_from_cart') AS removes,
       count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
       min(event_time) AS first_event_time, max(event_time) AS last_event_time,
       greatest(sum(${weight} * pow(2, -(epoch(TIMESTAMP '${end}') - epoch(event_time)) / 86400 / ${half_life})), 0) AS score
FROM events GROUP BY ALL;

-- step: matrix export
CREATE OR REPLACE TEMP TABLE user_index AS
SELECT user_id, row_number() OVER (ORDER BY user_id) - 1 AS user_index FROM (SELECT DISTINCT user_id FROM interactions);
CREATE OR REPLACE TEMP TABLE item_index AS
SELECT item_id, row_number() OVER (ORDER BY item_id) - 1 AS item_index FROM (SELECT DISTINCT item_id FROM interactions);
COPY user_index TO '${out}/matrix_users.parquet' (FORMAT parquet);
COPY item_index TO '${out}/matrix_items.parquet' (FORMAT parquet);
COPY (SELECT user_index, item_index, score FROM interactions JOIN user_index USING (user_id) JOIN item_index USING (item_id))
  TO '${out}/matrix_coo.parquet' (FORMAT parquet);

-- step: baskets
CREATE OR REPLACE TEMP TABLE baskets AS
SELECT basket_id, item_id FROM (
  SELECT 's:' || session_id AS basket_id, product_id AS item_id,
         row_number() OVER (PARTITION BY session_id ORDER BY max(event_time) DESC, product_id) AS position
  FROM events GROUP BY session_id, product_id
  UNION ALL
  SELECT 'u:' || user_id, product_id,
         row_number() OVER (PARTITION BY user_id ORDER BY max(event_time) DESC, product_id)
  FROM events GROUP BY user_id, product_id)
WHERE position <= ${basket_items};

-- step: item similarity
CREATE OR REPLACE TEMP TABLE item_similarity AS
WITH holding AS (SELECT item_id, count(*) AS n FROM baskets GROUP BY item_id),
pairs AS (SELECT a.item_id, b.item_id AS neighbor_item_id, count(*) AS support
          FROM baskets a JOIN baskets b USING (basket_id) WHERE a.item_id <> b.item_id GROUP BY ALL
          HAVING count(*) >= ${min_support}),
weighted AS (SELECT p.*, support / (pow(hi.n, 1 - ${damping}) * pow(hj.n, ${damping})) AS weight FROM pairs p
             JOIN holding hi ON hi.item_id = p.item_id JOIN holding hj ON hj.item_id = p.neighbor_item_id)
SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY item_id ORDER BY weight DESC, support DESC,
                                                neighbor_item_id) AS rank FROM weighted) WHERE rank <= ${top_k};

-- step: item neighbors
CREATE OR REPLACE TEMP TABLE item_neighbors AS
SELECT item_id, list(neighbor_item_id ORDER BY rank) AS neighbor_ids, list(weight ORDER BY rank) AS neighbor_weights
FROM item_similarity GROUP BY item_id;

-- step: user items
CREATE OR REPLACE TEMP TABLE rated AS
SELECT user_id, item_id, score FROM interactions WHERE score > 0
QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY score DESC, item_id) <= ${user_items};
CREATE OR REPLACE TEMP TABLE user_items AS
SELECT u.user_id, coalesce(r.item_ids, []) AS item_ids, coalesce(r.item_scores, []) AS item_scores,
       coalesce(b.bought_item_ids, []) AS bought_item_ids
FROM (SELECT DISTINCT user_id FROM interactions) u
LEFT JOIN (SELECT user_id, list(item_id ORDER BY score DESC, item_id) AS item_ids,
                  list(score ORDER BY score DESC, item_id) AS item_scores FROM rated GROUP BY user_id) r USING (user_id)
LEFT JOIN (SELECT user_id, list(item_id ORDER BY item_id) AS bought_item_ids FROM (
             SELECT user_id, item_id FROM interactions WHERE purchases > 0
             QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY last_event_time DESC, item_id) <= ${bought_kept})
           GROUP BY user_id) b USING (user_id);

-- step: cf recommendations
-- score(u, i) = sum over j of w_ij * r(u, j), each j reaching at most max_contributions items i; bought items excluded.
CREATE OR REPLACE TEMP TABLE cf_recommendations AS
WITH contributions AS (
  SELECT item_id, neighbor_item_id, weight FROM item_similarity
  QUALIFY row_number() OVER (PARTITION BY neighbor_item_id ORDER BY weight DESC, item_id) <= ${max_contributions}),
scores AS (
  SELECT r.user_id, c.item_id, sum(c.weight * r.score) AS score
  FROM rated r JOIN contributions c ON c.neighbor_item_id = r.item_id GROUP BY ALL),
candidates AS (
  SELECT * FROM scores ANTI JOIN (SELECT user_id, item_id FROM interactions WHERE purchases > 0) bought
  USING (user_id, item_id))
SELECT *, row_number() OVER (PARTITION BY user_id ORDER BY score DESC, item_id) AS rank FROM candidates
QUALIFY rank <= ${top_n};

-- step: user features
CREATE OR REPLACE TEMP TABLE price_quartiles AS
SELECT quantile_disc(price, 0.25) AS q1, quantile_disc(price, 0.5) AS q2, quantile_disc(price, 0.75) AS q3
FROM events WHERE price IS NOT NULL;
CREATE OR REPLACE TEMP TABLE rfm AS
SELECT user_id, CAST(floor((epoch(TIMESTAMP '${end}') - epoch(last_purchase)) / 86400) AS INTEGER) AS recency_days,
       * EXCLUDE (user_id)
FROM (SELECT user_id, max(event_time) FILTER (WHERE event_type = 'purchase') AS last_purchase,
             count(*) FILTER (WHERE event_type = 'purchase') AS frequency,
             coalesce(sum(price) FILTER (WHERE event_type = 'purchase'), 0) AS monetary,
             ${activity_counts},
             count(price) AS priced_events, count(*) FILTER (WHERE price < q1) AS below_q1,
             count(*) FILTER (WHERE price < q2) AS below_q2, count(*) FILTER (WHERE price < q3) AS below_q3
      FROM events, price_quartiles GROUP BY user_id);
CREATE OR REPLACE TEMP TABLE rfm_thresholds AS
SELECT quantile_disc(recency_days, ${quintiles}) AS r, quantile_disc(frequency, ${quintiles}) AS f,
       quantile_disc(monetary, ${quintiles}) AS m
FROM rfm WHERE frequency > 0;
CREATE OR REPLACE TEMP TABLE recent AS SELECT * FROM events WHERE event_time >= TIMESTAMP '${start_30d}';
CREATE OR REPLACE TEMP TABLE user_features AS
WITH scored AS (
  SELECT rfm.*,
         CASE WHEN frequency > 0 THEN 5 - ${r_above} END AS r_score,
         CASE WHEN frequency > 0 THEN 1 + ${f_above} END AS f_score,
         CASE WHEN frequency > 0 THEN 1 + ${m_above} END AS m_score
  FROM rfm, rfm_thresholds),
sessions AS (
  SELECT user_id, count(*) AS sessions_30d, avg(length_us) / 1e6 AS mean_session_seconds
  FROM (SELECT user_id, epoch_us(max(event_time)) - epoch_us(min(event_time)) AS length_us FROM recent
        GROUP BY user_id, session_id) GROUP BY user_id),
conversion AS (
  SELECT user_id, CASE WHEN sum(viewed) > 0 THEN sum(viewed * bought) / sum(viewed) END AS view_to_purchase_rate
  FROM (SELECT user_id, max(CAST(event_type = 'view' AS INTEGER)) AS viewed,
               max(CAST(event_type = 'purchase' AS INTEGER)) AS bought FROM recent GROUP BY user_id, product_id)
  GROUP BY user_id),
affinity AS (
  SELECT user_id, list(category_code ORDER BY position) AS top_categories,
         list(share ORDER BY position) AS top_category_shares
  FROM (SELECT user_id, category_code, n / sum(n) OVER (PARTITION BY user_id) AS share,
               row_number() OVER (PARTITION BY user_id ORDER BY n DESC, category_code) AS position
        FROM (SELECT user_id, category_code, count(*) AS n FROM recent WHERE category_code IS NOT NULL GROUP BY ALL))
  WHERE position <= ${top_categories} GROUP BY user_id),
brands AS (
  SELECT user_id, brand AS preferred_brand FROM (
    SELECT user_id, brand, count(*) AS n FROM recent WHERE brand IS NOT NULL GROUP BY ALL)
  QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY n DESC, brand) = 1)
SELECT user_id, recency_days, frequency, monetary, r_score, f_score, m_score, ${segment} AS segment,
       ${activity_columns}, coalesce(sessions_30d, 0) AS sessions_30d, mean_session_seconds, view_to_purchase_rate,
       top_categories, top_category_shares, preferred_brand,
       CASE WHEN priced_events = 0 THEN NULL WHEN below_q1 >= ceil(priced_events / 2) THEN '${band1}'
            WHEN below_q2 >= ceil(priced_events / 2) THEN '${band2}' WHEN below_q3 >= ceil(priced_events / 2) THEN '${band3}'
            ELSE '${band4}' END AS price_band
FROM scored LEFT JOIN sessions USING (user_id) LEFT JOIN conversion USING (user_id) LEFT JOIN affinity USING (user_id)
LEFT JOIN brands USING (user_id);

-- step: item features
CREATE OR REPLACE TEMP TABLE item_features AS
WITH per_item AS (
  SELECT product_id AS item_id, ${item_counts}, avg(price) AS price_mean, min(price) AS price_min,
         max(price) AS price_max
  FROM events GROUP BY product_id),
users AS (SELECT product_id AS item_id, count(DISTINCT user_id) AS distinct_users_30d FROM recent GROUP BY product_id),
prior AS (SELECT count(*) FILTER (WHERE event_type = 'cart') / nullif(count(*) FILTER (WHERE event_type = 'view'), 0) AS cart_p,
                 count(*) FILTER (WHERE event_type = 'purchase') / nullif(count(*) FILTER (WHERE event_type = 'view'), 0) AS purchase_p
          FROM recent)
SELECT per_item.*, coalesce(distinct_users_30d, 0) AS distinct_users_30d,
       least(greatest((carts_30d + ${strength} * coalesce(cart_p, 0)) / (views_30d + ${strength}), 0), 1) AS view_to_cart_rate,
       least(greatest((purchases_30d + ${strength} * coalesce(purchase_p, 0)) / (views_30d + ${strength}), 0), 1) AS view_to_purchase_rate,
       row_number() OVER (ORDER BY views_30d + carts_30d + purchases_30d DESC, item_id) AS popularity_rank,
       row_number() OVER (PARTITION BY coalesce(items.category_code, '${unknown_category}')
                          ORDER BY views_30d + carts_30d + purchases_30d DESC, item_id) AS category_popularity_rank,
       items.category_code, string_split(items.category_code, '.')[1] AS category_l1,
       string_split(items.category_code, '.')[2] AS category_l2, string_split(items.category_code, '.')[3] AS category_l3,
       items.brand
FROM per_item LEFT JOIN users USING (item_id) LEFT JOIN items USING (item_id), prior;

-- step: category popular
CREATE OR REPLACE TEMP TABLE category_popular AS
WITH placed AS (
  SELECT item_id, popularity_rank, unnest(CASE WHEN category_code IS NULL THEN ['${all_categories}'] ELSE list_append(
           list_transform(range(1, len(string_split(category_code, '.')) + 1),
                          lambda n: array_to_string(string_split(category_code, '.')[1:n], '.')), '${all_categories}') END) AS category
  FROM item_features)
SELECT category, list(item_id ORDER BY popularity_rank, item_id) AS item_ids FROM (
  SELECT * FROM placed
  QUALIFY row_number() OVER (PARTITION BY category ORDER BY popularity_rank, item_id) <= ${popular_kept})
GROUP BY category;

-- step: write gold tables
COPY items TO '${out}/items.parquet' (FORMAT parquet);
COPY interactions TO '${out}/interactions.parquet' (FORMAT parquet);
COPY item_similarity TO '${out}/item_similarity.parquet' (FORMAT parquet);
COPY item_neighbors TO '${out}/item_neighbors.parquet' (FORMAT parquet);
COPY user_items TO '${out}/user_items.parquet' (FORMAT parquet);
COPY cf_recommendations TO '${out}/cf_recommendations.parquet' (FORMAT parquet);
COPY user_features TO '${out}/user_features.parquet' (FORMAT parquet);
COPY item_features TO '${out}/item_features.parquet' (FORMAT parquet);
COPY category_popular TO '${out}/category_popular.parquet' (FORMAT parquet);
